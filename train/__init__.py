"""Training side: the PMT-IQA model, checkpoints, dataset readers, the built-in dataset and
progressive multi-task training. Installed as `pmtiqa_deploy.train`; needs the `train` extra."""
