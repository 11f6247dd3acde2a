"""DWA-KD and the framework methods (SFT); the baselines live in the top-level ``baselines`` package."""
