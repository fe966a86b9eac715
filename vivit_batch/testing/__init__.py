"""What the tests and the benchmarks build their inputs with: videos whose frames say which frame
they are (`media`), small ViViT checkpoints in Hugging Face layout (`checkpoints`, needs
transformers), and the Hugging Face page's recipe to compare against (`reference`)."""
