from embedded.generator import main

main()
