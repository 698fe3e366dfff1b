"""The paper's published figures (Springenberg et al. 2014, Table 3: CIFAR-10 without data augmentation)."""

TABLE3_ERROR = {  # test error in %, no augmentation
    "model-a": 12.47, "strided-cnn-a": 13.46, "convpool-cnn-a": 10.21, "all-cnn-a": 10.30,
    "model-b": 10.20, "strided-cnn-b": 10.98, "convpool-cnn-b": 9.33, "all-cnn-b": 9.10,
    "model-c": 9.74, "strided-cnn-c": 10.19, "convpool-cnn-c": 9.31, "all-cnn-c": 9.08,
}
TABLE3_PARAMS = {  # as printed in the paper (rounded)
    "model-a": "0.9M", "strided-cnn-a": "0.9M", "convpool-cnn-a": "1.28M", "all-cnn-a": "1.28M",
    "model-b": "1M", "strided-cnn-b": "1M", "convpool-cnn-b": "1.35M", "all-cnn-b": "1.35M",
    "model-c": "1.3M", "strided-cnn-c": "1.3M", "convpool-cnn-c": "1.4M", "all-cnn-c": "1.4M",
}
PAPER_EPOCHS = 350
PAPER_LRS = (0.25, 0.1, 0.05, 0.01)
PAPER_MILESTONES = (200, 250, 300)
