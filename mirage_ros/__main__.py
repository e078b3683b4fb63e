from mirage_ros.cli import main

raise SystemExit(main())
