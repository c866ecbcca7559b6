"""JupyterLab server config for the browser tests (``jupyter lab --config this-file``).

Everything that could reach the network or leave state behind is off: news, update checks,
the extension manager's PyPI queries; settings and workspaces live in temporary folders.
"""

import json
import os
import tempfile

c = get_config()  # noqa: F821 - provided by jupyter's config loader

c.ServerApp.ip = "127.0.0.1"
c.ServerApp.port = int(os.environ["GRADSIGHT_LAB_PORT"])
c.ServerApp.port_retries = 0
c.ServerApp.open_browser = False
c.ServerApp.allow_root = True  # CI runs as root; without this the server exits at once
c.IdentityProvider.token = os.environ["GRADSIGHT_LAB_TOKEN"]
c.ServerApp.root_dir = os.environ["GRADSIGHT_LAB_ROOT"]
c.ServerApp.terminals_enabled = False
c.LabApp.expose_app_in_browser = True  # window.jupyterapp, for the tests
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.extension_manager = "readonly"
c.LanguageServerManager.autodetect = False

_settings = tempfile.mkdtemp(prefix="gradsight-lab-settings-")
os.makedirs(os.path.join(_settings, "@jupyterlab", "apputils-extension"))
with open(
    os.path.join(_settings, "@jupyterlab", "apputils-extension", "notification.jupyterlab-settings"), "w"
) as f:
    json.dump({"fetchNews": "false"}, f)
c.LabApp.user_settings_dir = _settings
c.LabApp.workspaces_dir = tempfile.mkdtemp(prefix="gradsight-lab-workspaces-")
