from mrsflow.cli import main

raise SystemExit(main())
