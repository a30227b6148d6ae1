"""
The page's own files, and nothing else from ``web/``.

An explicit allow-list built once at start from the web root: ``*.html`` at the top, ``js/*.js``,
``vendor/<library>/*.js`` (third-party scripts, unmodified), ``css/*.css`` and images (top level
or under ``images/``). ``README.md``, ``package.json``,
``test/`` and anything added later by accident are not served. Files go out through aiohttp's
``FileResponse``: keep-alive, HEAD, ETag / Last-Modified (304), Range, 405 for other methods.
"""

import os
from typing import Dict

from aiohttp import web

IMAGE_EXTENSIONS = ('.png', '.svg', '.ico', '.jpg', '.jpeg', '.webp', '.gif')
CONTENT_TYPES = {'.js': 'text/javascript', '.css': 'text/css', '.html': 'text/html',
                 '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon',
                 '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.webp': 'image/webp',
                 '.gif': 'image/gif', '.webmanifest': 'application/manifest+json'}


def _allowed(relative: str) -> bool:
    parts = relative.split('/')
    name = parts[-1].lower()
    if name.startswith('.'):
        return False
    if len(parts) == 1:
        return name.endswith(('.html', '.webmanifest') + IMAGE_EXTENSIONS)
    folder = parts[0]
    if folder == 'js' and len(parts) == 2:
        return name.endswith(('.js', '.mjs'))
    if folder == 'css' and len(parts) == 2:
        return name.endswith('.css')
    if folder == 'vendor' and len(parts) == 3:   # vendor/<library>/<file>.js, unmodified
        return name.endswith('.js')
    if folder == 'images':
        return name.endswith(IMAGE_EXTENSIONS)
    return False


def page_files(web_root: str) -> Dict[str, str]:
    """Map URL paths (``/js/app.js``) to files for every allowed file under ``web_root``."""
    files = {}
    if not web_root or not os.path.isdir(web_root):
        return files
    root = os.path.abspath(web_root)
    for folder, directories, names in os.walk(root, followlinks=True):
        directories[:] = [d for d in directories if not d.startswith('.')]
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root).replace(os.sep, '/')
            if _allowed(relative) and os.path.isfile(path):
                files['/' + relative] = path
    if '/index.html' in files:
        files['/'] = files['/index.html']
    return files


def add_routes(app: web.Application, web_root: str) -> int:
    """Add one GET (and HEAD) route per page file; return how many."""
    files = page_files(web_root)
    for url, path in sorted(files.items()):
        app.router.add_get(url, _file_handler(path))
    return len(files)


def _file_handler(path: str):
    extension = os.path.splitext(path)[1].lower()
    content_type = CONTENT_TYPES.get(extension, 'application/octet-stream')
    if content_type.startswith('text/') or content_type.endswith('+json'):
        content_type += '; charset=utf-8'

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={'Content-Type': content_type,
                                               'Cache-Control': 'no-cache'})
    return serve
