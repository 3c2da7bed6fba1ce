from kwarp.cli import main

raise SystemExit(main())
