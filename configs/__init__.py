"""The presets, as YAML data. Installed as the package `ada.presets` (see pyproject.toml), so that
`ada.config` finds them through importlib.resources in a checkout and in an installed copy alike."""
