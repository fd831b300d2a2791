from rcompile.cli import main

main()
