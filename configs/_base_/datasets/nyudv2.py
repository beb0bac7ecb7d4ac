# NYUDv2 multi-task release (NYUD_MT): 795 train / 654 val images.
dataset_name = 'nyudv2'
tasks = ['semseg', 'depth', 'normals']
img_size = (448, 448)
data_root = 'data/NYUD_MT'  # override with --data-root

train_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='NYUDv2MT', data_root=data_root, split='train', tasks=tasks, img_size=img_size),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='NYUDv2MT', data_root=data_root, split='val', tasks=tasks, img_size=img_size),
)
val_evaluator = dict(type='MultiTaskMetric', tasks=tasks, dataset_name=dataset_name)
eval_protocol = 'resized-448'
