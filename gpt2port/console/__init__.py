"""What a long call shows on stderr: progress bars and phase markers."""
