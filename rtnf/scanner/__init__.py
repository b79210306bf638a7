"""Reading scanner exports: watch the export folder, tell when a volume is complete, read it.

``watcher`` sees files appear, ``export`` groups them into volumes and knows
when one is complete, ``sequencer`` puts volumes in order and judges lateness;
``dicom`` and ``nifti`` read them into a :class:`~rtnf.scanner.volume.Volume`.
"""
