from mcpz.cli import main

main()
