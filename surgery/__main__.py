from surgery.cli import main

raise SystemExit(main())
