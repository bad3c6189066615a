"""A self-contained EMG world for the demo and the tests: a sample EMG tree, a throwaway MariaDB
and a local borg repository. Nothing here touches a system service."""
