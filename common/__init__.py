"""What both jobs share: storage, formats, the manifest, the model, the command line."""
