"""absl apps on `model.fit`: compress (the main job), and later pretrain and fine-tune."""
