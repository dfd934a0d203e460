"""Developer tools run from a checkout of the repository, never installed with the package
(``[tool.setuptools]`` packages only ``agent``): the generators that keep parts of ``docs/``
current. Run them from the repository root as modules, so the checkout's ``agent`` and
``tools`` are the ones imported:

``python -m tools.configdoc --write|--check docs/configuration.md``
    the configuration reference, from the configuration model and ``config/agent.example.toml``;
``python -m tools.portal_schemas --write|--check docs/portal-api.md``
    the JSON Schemas of the portal messages, from the models of :mod:`agent.uploader.protocol`.

tests/test_configdoc.py and tests/test_portal_protocol.py fail when a document is stale.
"""
