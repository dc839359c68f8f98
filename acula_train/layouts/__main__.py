from .prepare import main

main()
