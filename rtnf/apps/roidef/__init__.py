"""ROI definition before a run: ``rtnf roi <kind> ...``.

Every kind puts a region on the participant's *reference volume* (the
functional grid the run will use) and returns an :class:`RoiDefinition`: a
boolean mask on that grid, its voxel count, volume and centre of mass, and
the fraction of the region that lies inside the field of view. The command
line writes the mask as NIfTI (``uint8``, the reference's affine) and a PNG of
its outline over the reference for the operator to check; the mask then goes
into the session config as ``[rois.<name>] mask = "..."``.

==============  ==============================================================
``mask``        a NIfTI in any space with an affine, resampled to the grid
                (nearest neighbour, or linear + threshold for probability maps)
``sphere``      a sphere at scanner RAS millimetres (same voxels as
                :class:`rtnf.analysis.rois.SphereROI`)
``atlas``       labels of a label image in any space + its table
``mni``         a region defined in MNI152 space (Harvard-Oxford or HCP atlas
                labels, :mod:`.atlases`; an MNI sphere; an MNI-space mask;
                built-in approximate ellipsoids) brought to the reference by a
                multi-start registration of the MNI152 template to the
                reference volume, directly or through the session's T1
                (SimpleITK, :mod:`.registration`, once, before the run)
``localizer``   a threshold or the top k voxels of a t-map from a localizer
                run, inside a search mask; :func:`localizer_tmap` computes the
                t-map from a series and its events with rtnf's GLM
``transfer``    day-1 masks carried onto a day-N reference by a rigid
                registration of the two reference EPIs (:mod:`.transfer`)
==============  ==============================================================

Regions that are empty, or whose larger part falls outside the field of view
(less than ``min_coverage``, default 0.5), raise :class:`RoiDefError`; its
message names the parameter to change. The command line prints that message
and exits with code 2.

Built-in MNI regions are *approximations*, not atlas labels: nilearn's package
data holds only the MNI152 templates and masks (no network, so no
Harvard-Oxford), so each region is an ellipsoid in MNI millimetres placed on
the structure from standard coordinates, intersected with the MNI152
grey-matter probability map (>= ``gm_threshold``). For a real atlas region use
``rtnf roi mni --atlas harvard-oxford|hcp --label NAME`` (``--atlas-dir`` offline) or
``--atlas-file IMAGE --table CSV --label NAME``; in code, :func:`atlas_region` and
``mni_roi(grid, registration, mask=(data, affine))``.
"""

from ._common import DEFAULT_MIN_COVERAGE, RoiDefError, RoiDefinition
from .cli import KINDS, add_arguments, main, run
from .localizer import blocks_from_events, epi_mask, localizer_roi, localizer_tmap
from .atlases import ATLAS_FILES, atlas_region, find_label, load_atlas
from .mni import (
    MNI_REGIONS,
    REGISTRATION_PARAMETERS,
    MniRegion,
    MniRegistration,
    mni_region_image,
    mni_roi,
    register_mni,
)
from .output import plot_roi, save_mask
from .reference import load_reference, load_series
from .regions import atlas_roi, mask_from_image, read_label_table, restrict_to, sphere_roi
from .registration import MultiStart, RegistrationResult, Stage, register
from .transfer import Transfer, TransferredMask, transfer_masks

__all__ = [
    "DEFAULT_MIN_COVERAGE",
    "RoiDefError",
    "RoiDefinition",
    "MniRegion",
    "MNI_REGIONS",
    "MniRegistration",
    "REGISTRATION_PARAMETERS",
    "load_reference",
    "load_series",
    "mask_from_image",
    "sphere_roi",
    "atlas_roi",
    "read_label_table",
    "register_mni",
    "mni_roi",
    "mni_region_image",
    "epi_mask",
    "localizer_tmap",
    "localizer_roi",
    "blocks_from_events",
    "save_mask",
    "plot_roi",
    "ATLAS_FILES",
    "load_atlas",
    "find_label",
    "atlas_region",
    "restrict_to",
    "MultiStart",
    "Stage",
    "RegistrationResult",
    "register",
    "Transfer",
    "TransferredMask",
    "transfer_masks",
    "KINDS",
    "add_arguments",
    "run",
    "main",
]
