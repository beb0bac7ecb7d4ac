"""The training protocol travels from the config to the run record, and records of two protocols
are never compared: not in one leaderboard table, not for Δm."""
import numpy as np
import pytest

import mtlbench.run  # noqa: F401  (registers the loader's departure)
from mtlbench.config import find_config, inner_dataset, load_config
from mtlbench.datasets import PascalContextMT
from mtlbench.evaluation.delta_m import delta_m
from mtlbench.protocol import departures, protocol_label
from mtlbench.reporting import comparability as C
from mtlbench.reporting import leaderboard as L
from mtlbench.reporting import schema as S

from test_leaderboard import KNOWN, MTLORA, PASCAL_BASE, baselines, rec, row, two_seed_mtlora

PAD = dict(protocol='label-pad-ignore', departures=['label-pad-ignore'])
REF = dict(protocol='reference', departures=[])


def test_config_defaults_are_the_reference_and_options_name_departures():
    cfg = load_config(find_config('mtlora', 'pascal_context'))
    assert protocol_label(cfg) == 'reference' and cfg.train_dataloader.drop_last is True
    cfg = load_config(find_config('mtlora', 'nyudv2'), {
        'data_protocol.label_pad': 255, 'data_protocol.image_cast': 'clip',
        'data_protocol.normals_resample': 'nearest-valid', 'train_dataloader.drop_last': False})
    assert departures(cfg) == ['image-clip', 'label-pad-ignore', 'normals-nearest-valid', 'train-keep-last']
    assert protocol_label(cfg) == 'image-clip+label-pad-ignore+normals-nearest-valid+train-keep-last'
    for key in ('train_dataloader', 'val_dataloader'):  # both datasets follow data_protocol
        ds = inner_dataset(cfg[key])
        assert (ds.label_pad, ds.image_cast, ds.normals_resample) == (255, 'clip', 'nearest-valid')


def test_dataset_from_config_pads_as_its_protocol_says(pascal_root):
    cfg = load_config(find_config('mtlora', 'pascal_context'), {'data_protocol.label_pad': 255})
    kwargs = {k: v for k, v in inner_dataset(cfg.train_dataloader).items() if k != 'type'}
    ds = PascalContextMT(**dict(kwargs, data_root=pascal_root))
    (warp,) = [t for t in ds.pipeline.transforms if type(t).__name__ == 'MTRandomScaleRotate']
    assert warp.label_pad == 255
    with pytest.raises(ValueError, match='image_cast must be one of'):
        PascalContextMT(pascal_root, image_cast='saturate')


def test_record_protocol_must_match_its_departures():
    assert S.validate_record(rec('mtlora', 'r=64', 0, MTLORA, **PAD)) == []
    bad = rec('mtlora', 'r=64', 0, MTLORA)
    bad.update(protocol='reference', departures=['label-pad-ignore'])
    assert any('does not match departures' in p for p in S.validate_record(bad))
    assert C.record_protocol(rec('mtlora', 'r=64', 0, MTLORA)) == 'unknown'  # written before


def test_delta_m_baseline_has_the_same_protocol():
    shifted = {t: v + 5.0 for t, v in PASCAL_BASE.items()}
    pad_base = [rec('single_task', '', 0, {t: v}, **PAD) for t, v in shifted.items()]
    mtl = rec('mtlora', 'r=64', 0, MTLORA, **REF)
    value, reason = C.compute_delta_m_for_record(mtl, pad_base + [mtl])
    assert value is None and 'protocol reference' in reason
    value, _ = C.compute_delta_m_for_record(mtl, pad_base + baselines(seeds=(0,), **REF) + [mtl])
    assert value == pytest.approx(delta_m(MTLORA, PASCAL_BASE, list(MTLORA)))


def test_leaderboard_never_puts_two_protocols_in_one_table():
    shifted = {t: v + 5.0 for t, v in PASCAL_BASE.items()}
    runs = (baselines(**REF) + two_seed_mtlora(**REF)
            + [rec('single_task', '', s, {t: v}, **PAD) for s in (0, 1) for t, v in shifted.items()]
            + two_seed_mtlora(**PAD) + two_seed_mtlora())  # the last: no protocol recorded
    result = L.build_leaderboard(runs, 'pascal_context', known_methods=KNOWN)
    titles = [t.title for t in result.tables]
    assert len(titles) == 3
    assert [t.key['protocol'] for t in result.tables] == ['reference', 'label-pad-ignore', 'unknown']
    assert all(f"protocol: {t.key['protocol']}" in t.title for t in result.tables)
    ref_table, pad_table, unknown = result.tables
    assert row(ref_table, 'mtlora', 'r=64')['semseg_n'] == 2  # its two seeds, not four
    means = dict(MTLORA, semseg=67.5)
    ref_base = {t: v + 0.05 for t, v in PASCAL_BASE.items()}  # mean over seeds 0, 1
    assert row(ref_table, 'mtlora', 'r=64')['delta_m'] == pytest.approx(delta_m(means, ref_base, list(means)))
    pad_mean = {t: v + 5.0 for t, v in PASCAL_BASE.items()}
    assert row(pad_table, 'mtlora', 'r=64')['delta_m'] == pytest.approx(delta_m(means, pad_mean, list(means)))
    assert np.isnan(row(unknown, 'mtlora', 'r=64')['delta_m'])  # no 'unknown' baseline
