# The MTLoRA reference recipe: AdamW (0.9, 0.999), weight decay 0.05 (none on 1-D parameters nor
# on names ending in .bias; the relative-position tables ARE decayed, as in the reference, see
# mtlbench/optim.py), lr 5e-4 x batch / 512, 20 linear warm-up epochs from 1e-3 x lr,
# per-iteration cosine to 1e-2 x lr, 300 epochs, grad-clip 5.0.
# Training precision (mtlbench/precision.py): fp16 AMP + dynamic loss scaler on CUDA, as the
# reference; CPU runs train in fp32 (departure 'precision-not-fp16'); --amp overrides.
precision = 'fp16'
optim_wrapper = dict(
    type='OptimWrapper',  # set by precision: AmpOptimWrapper for fp16 / bf16
    constructor='ReferenceOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),
    # rel_pos_decay_mult=0.0: departure 'rel-pos-no-decay'
    paramwise_cfg=dict(rel_pos_decay_mult=1.0, custom_keys={}),
)
# lr above is for a total batch of 512; mmengine scales it to the real total batch.
auto_scale_lr = dict(enable=True, base_batch_size=512)

max_epochs = 300
warmup_epochs = 20
# timm's per-iteration cosine with a linear warm-up prefix, one iteration late as the reference's
# loop steps it (mtlbench/lr_schedule.py); lr ratios 5e-7 / 5e-4 and 5e-6 / 5e-4.
param_scheduler = [
    dict(type='ReferenceCosineLR', warmup=warmup_epochs, warmup_ratio=1e-3, min_ratio=1e-2, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
val_cfg = dict(type='ValLoop')
