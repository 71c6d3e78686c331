from textvision.pretrain.cli import main

main()
