"""Presentation: self-contained HTML (``html``), unit cards (``cards``), plotly figures
(``plotting``). Every figure function returns a ``plotly.graph_objects.Figure``."""
