"""Detection transfer: convert a ResNet-50 to detectron2 C4, fine-tune and evaluate on VOC / COCO."""

import warnings

# detectron2 scripts a few functions with torch.jit.script when imported, which this torch deprecates:
# a warning no user can act on, printed before the output of every transfer command.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
