from aaclip.cli import main

raise SystemExit(main())
