from prunectl.cli.main import main

main()
