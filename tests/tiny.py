"""The tiny training config the single-process tests share: a vit_test encoder on 4 x 32 px synthetic clips,
fp32 on CPU, no progress bar or TensorBoard (overrides of the config schema)."""

TINY_RUN = [
    "model.name=vit_test",
    "model.pred_width=32",
    "model.pred_depth=2",
    "model.pred_heads=4",
    "data.dataset=synthetic",
    "data.frames_per_clip=4",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.precision=fp32",
    "train.device=cpu",
    "log.progress=false",
    "log.tensorboard=false",
]
