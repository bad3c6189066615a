from emg_borg.cli import main

raise SystemExit(main())
