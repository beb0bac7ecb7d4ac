# NYUDv2 multi-task release (NYUD_MT): 795 train / 654 val images.
dataset_name = 'nyudv2'
tasks = ['semseg', 'depth', 'normals']
img_size = (448, 448)
data_root = 'data/NYUD_MT'  # override with --data-root

# The data pipeline of the MTLoRA reference; any other value is a named protocol departure that
# the run record's ``protocol`` carries (README, "Protocol options"): label_pad=255
# 'label-pad-ignore', image_cast='clip' 'image-clip', normals_resample='nearest-valid'
# 'normals-nearest-valid'; train_dataloader.drop_last=False 'train-keep-last'.
data_protocol = dict(label_pad=0, image_cast='wrap', normals_resample='cubic')

train_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,  # the reference drops the last incomplete batch
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='compact_collate'),  # uint8 images / labels over the bus
    dataset=dict(type='NYUDv2MT', data_root=data_root, split='train', tasks=tasks, img_size=img_size),
)
val_dataloader = dict(
    batch_size=32,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='compact_collate'),  # uint8 images / labels over the bus
    dataset=dict(type='NYUDv2MT', data_root=data_root, split='val', tasks=tasks, img_size=img_size),
)
val_evaluator = dict(type='MultiTaskMetric', tasks=tasks, dataset_name=dataset_name)
eval_protocol = 'resized-448'
