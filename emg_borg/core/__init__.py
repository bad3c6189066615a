"""The bottom layer: types and helpers every other layer shares (run state, ledger, run lock,
snapshot and provider contract, manifest model, signals, files, /proc). Imports nothing of
emg-borg but `emg_borg.errors`."""
