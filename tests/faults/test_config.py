"""Configs are parsed safely (yaml.safe_load: a tag that would run code is refused) and strictly
(an unknown key is an error), for the pretraining, eval and pipeline configs, through their CLIs."""

import pytest

from core.config import ConfigError, load_config
from tests.helpers import REPO, one_error_line

DEFAULTS = {"pretrain": REPO / "pretrain/configs/defaults.yaml", "eval": REPO / "eval/configs/defaults.yaml",
            "pipeline": REPO / "pipeline/configs/defaults.yaml"}
INT_KEY = {"pretrain": "seed", "eval": "seed", "pipeline": "detection.trials"}  # an int-valued key of each
NESTED = {"pretrain": "optim", "eval": "linear", "pipeline": "detection"}  # a section of each


def _yaml(key: str, value: str) -> str:
    """`a.b: v` as nested YAML."""
    *parents, leaf = key.split(".")
    return "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + f"{'  ' * len(parents)}{leaf}: {value}\n"


def _cli(stage):
    if stage == "pretrain":
        from pretrain.train import cli
        return lambda cfg, extra: cli(["--config", str(cfg), *extra])
    if stage == "eval":
        from eval.knn import cli_main
        return lambda cfg, extra: cli_main(["--config", str(cfg), *extra])
    from pipeline.run import cli
    return lambda cfg, extra: cli(["--config", str(cfg), *extra])


def _one_error(capsys, run, cfg, extra=()) -> str:
    return one_error_line(capsys, lambda: run(cfg, list(extra)))


@pytest.mark.parametrize("stage", DEFAULTS)
def test_yaml_that_would_run_code_is_refused(tmp_path, capsys, stage):
    marker = tmp_path / "code_ran"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"_base_: {DEFAULTS[stage]}\n" + _yaml(INT_KEY[stage], f'!!python/object/apply:os.system ["touch {marker}"]'))
    err = _one_error(capsys, _cli(stage), cfg)
    assert f"config file {cfg} is not valid YAML" in err and "python/object/apply" in err
    # the same tag in a command-line override
    err = _one_error(capsys, _cli(stage), DEFAULTS[stage], [f'{INT_KEY[stage]}=!!python/object/apply:os.system ["touch {marker}"]'])
    assert "uses a YAML tag that safe loading refuses" in err
    assert not marker.exists()


@pytest.mark.parametrize("stage", DEFAULTS)
def test_unknown_keys_are_errors(tmp_path, capsys, stage):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(f"_base_: {DEFAULTS[stage]}\nseeed: 1\n")
    assert "unknown config key 'seeed'" in _one_error(capsys, _cli(stage), cfg)
    key = f"{NESTED[stage]}.nosuch"
    assert f"unknown config key '{key}'" in _one_error(capsys, _cli(stage), DEFAULTS[stage], [f"{key}=1"])
    with pytest.raises(ConfigError, match="expects int"):
        load_config(DEFAULTS[stage], [f"{INT_KEY[stage]}=ten"])
