from edgetune_cli.main import main

raise SystemExit(main())
