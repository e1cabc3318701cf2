"""Where checkpoints are fetched from: Hugging Face Hub snapshots, OpenAI's release files."""
