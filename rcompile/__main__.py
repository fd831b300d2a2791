from rcompile.interrupts import main

main()
