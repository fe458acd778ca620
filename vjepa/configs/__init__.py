"""Config files shipped inside the package, so they work from a regular install: `--config quickstart`
(or `quickstart.yaml`) finds `quickstart.yaml` here when no such file exists where the command runs.
`configs/quickstart.yaml` at the top of a checkout is a symbolic link to the file here (one copy)."""
