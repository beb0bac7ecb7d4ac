# Swin-T at 448x448 + per-task downsampler and HRNet head, as in the MTLoRA reference.
# `dataset` and `tasks` are filled from the dataset base (`dataset_name`, `tasks`) when the
# config is resolved (mtlbench.config.resolve_config); `method` is set by each leaf config.
model = dict(
    type='MultiTaskModel',
    dataset=None,
    tasks=None,
    method=dict(type='full_ft'),
    backbone=dict(
        type='SwinBackbone',
        arch='tiny',
        img_size=(448, 448),
        window_size=7,
        drop_path_rate=0.2,
        # Local path to swin_tiny_patch4_window7_224.pth (official) or a timm checkpoint;
        # None = random init (a warning is logged). Set with --pretrained.
        pretrained=None,
        # What it was pretrained on, recorded in the run record: 'in1k', 'in22k', 'in22k-ft-in1k'
        # or 'unknown'; None = inferred from the official file names or a 22K classifier
        # (mtlbench/backbones/pretraining.py).
        pretrained_on=None,
    ),
    decoder=dict(channels=(18, 36, 72, 144)),
    loss_weights=None,  # None = reference weights (mtlbench.tasks)
    # non-blocking copy to the device, uint8 images normalised there (mtlbench.transfer)
    data_preprocessor=dict(type='MultiTaskDataPreprocessor'),
)
