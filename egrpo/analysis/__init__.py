"""Analysis of finished runs, shared by `egrpo report`, `egrpo claims` and `egrpo compare` (each a
short composition in egrpo/stages/): one run table from the files or from MLflow (runs.py), held-out
curves read at a common budget, at a point or on a grid (curves.py), statistics (stats.py), the
claims' rules (claims.py), tables (tables.py), Markdown (markdown.py) and plots that only draw
(plots.py). Nothing here trains or samples: it reads what the stages wrote."""



