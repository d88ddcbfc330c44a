/* The first view, before OpenSeadragon: the whole slide's tiles at the level OpenSeadragon will
   draw it, asked for as soon as the page is parsed (computed from the facts and descriptor the
   page carries, server/routes/viewer.py, and the viewer's size), and painted where
   OpenSeadragon will draw them. Without this the screen would stay empty until OpenSeadragon
   (350 KB) and the page's other scripts have loaded and run, and only then ask for the tiles.

   viewer.js starts OpenSeadragon once the painting is on screen (TSFirstView.painted), takes
   the decoded tiles (TSFirstView.take) instead of asking again, and hands over
   (TSFirstView.handOver) once its own view is complete: the painting goes, what nobody took
   is dropped. The painting is OpenSeadragon's picture, pixel for pixel
   (tests/viewer/test_viewer_speed.py), so the hand-over does not show. The user's first key,
   click or wheel before that removes the painting too. ``#osd[data-first-view]`` says where
   it stands: "painting", "painted" (every tile drawn), "handed-over".

   Only for the plain opening: a view in the address (a shared link, side-by-side panes,
   channel settings) or a slide with channels or focal planes opens elsewhere or asks with
   other parameters, so nothing is fetched ahead for it. */
"use strict";

const TSFirstView = (() => {
  const WAIT_MS = 2000;
  const early = new Map(); // tile URL -> Promise<HTMLImageElement>, decoded
  let canvas = null; // the painting, above OpenSeadragon's canvas until handed over
  let stopPainting = () => {};
  let shown = Promise.resolve(); // see painted()

  /** The whole slide of ``source`` fitted to ``width`` x ``height`` CSS pixels and centred, as
      OpenSeadragon's home view: CSS px = offset + level-0 px x ``fit``. */
  function homePlacement(source, width, height) {
    const w = Number(source.Image.Size.Width);
    const h = Number(source.Image.Size.Height);
    const fit = Math.min(width / w, height / h);
    return { fit, offsetX: (width - w * fit) / 2, offsetY: (height - h * fit) / 2 };
  }

  /** The level OpenSeadragon draws the home view at (``fit`` CSS px per level-0 px), and its
      tiles: URL (``query`` appended), left and top in level pixels. */
  function homeTiles(source, slideId, fit, query) {
    const image = source.Image;
    const w = Number(image.Size.Width);
    const h = Number(image.Size.Height);
    const tile = Number(image.TileSize);
    const overlap = Number(image.Overlap) || 0;
    if (!(w > 0 && h > 0 && tile > 0)) return [];
    const maxLevel = Math.ceil(Math.log2(Math.max(w, h)));
    const devicePerLevel0 = fit * (window.devicePixelRatio || 1);
    // OpenSeadragon's rule: the finest level drawn at >= minPixelRatio device px per level px.
    const minPixelRatio = TS.viewerOptions({}).minPixelRatio;
    let level = maxLevel;
    while (level > 0 && devicePerLevel0 * 2 ** (maxLevel - level) < minPixelRatio) level -= 1;
    const levelScale = 2 ** (maxLevel - level); // level-0 pixels per level pixel
    const columns = Math.ceil(Math.ceil(w / levelScale) / tile);
    const rows = Math.ceil(Math.ceil(h / levelScale) / tile);
    const tiles = [];
    for (let y = 0; y < rows; y++) {
      for (let x = 0; x < columns; x++) {
        tiles.push({
          url: `/deepzoom/${slideId}_files/${level}/${x}_${y}.${image.Format}${query}`,
          // A DeepZoom tile carries its neighbours' edges (the overlap) above and left.
          left: x * tile - (x > 0 ? overlap : 0),
          top: y * tile - (y > 0 ? overlap : 0),
          levelScale,
          // OpenSeadragon's canvas drawer draws tiles without overlap 1 CSS px larger (no seams).
          grow: overlap > 0 ? 0 : 1,
          image: null,
        });
      }
    }
    return tiles;
  }

  /** ``tile`` drawn on ``painting`` where OpenSeadragon's home view puts it; every tile
      decoded so far when ``tile`` is null or ``element`` has changed size (the painting covers
      it in device pixels, so it is as sharp as OpenSeadragon's canvas). */
  function paint(painting, element, source, tiles, tile) {
    const width = element.clientWidth;
    const height = element.clientHeight;
    const ratio = window.devicePixelRatio || 1;
    let drawn = tile ? [tile] : tiles;
    if (painting.width !== Math.round(width * ratio) ||
        painting.height !== Math.round(height * ratio)) {
      painting.width = Math.round(width * ratio); // and cleared
      painting.height = Math.round(height * ratio);
      painting.style.width = `${width}px`;
      painting.style.height = `${height}px`;
      drawn = tiles;
    }
    const { fit, offsetX, offsetY } = homePlacement(source, width, height);
    const context = painting.getContext("2d");
    for (const { image, left, top, levelScale, grow } of drawn) {
      if (!image) continue;
      const k = fit * levelScale * ratio; // device px per level px
      context.drawImage(image, offsetX * ratio + left * k, offsetY * ratio + top * k,
        image.naturalWidth * k + grow * ratio, image.naturalHeight * k + grow * ratio);
    }
  }

  function start() {
    if (location.search || typeof TS === "undefined") return;
    const data = TS.slideData();
    const info = data && data.info;
    const slideId = location.pathname.split("/").pop();
    if (!info || info.id !== slideId || info.kind !== "rgb" || (info.planes || []).length > 1) return;
    const query = TS.tileQuery(info);
    const source = TS.dziSource(data.dzi, slideId, query);
    const element = document.getElementById("osd");
    if (!source || !element || !(element.clientWidth > 0 && element.clientHeight > 0)) return;
    const tiles = homeTiles(source, slideId, homePlacement(source, element.clientWidth,
      element.clientHeight).fit, query);
    if (tiles.length === 0) return;
    const painting = document.createElement("canvas");
    painting.className = "first-view";
    canvas = painting;
    element.append(painting);
    element.dataset.firstView = "painting";
    let left = tiles.length;
    for (const tile of tiles) {
      const loaded = TS.loadTile(tile.url);
      early.set(tile.url, loaded);
      loaded.then((image) => {
        if (canvas !== painting) return;
        tile.image = image;
        paint(painting, element, source, tiles, tile);
        left -= 1;
        if (left === 0) element.dataset.firstView = "painted";
      }, () => {}); // a failure is the taker's to see (it asks again)
    }
    // Every tile drawn or failed, then one frame to show them; a tile that hangs holds
    // OpenSeadragon back no longer than WAIT_MS.
    const drawn = Promise.allSettled(early.values()).then(() => new Promise((resolve) => {
      requestAnimationFrame(() => setTimeout(resolve, 0));
    }));
    shown = Promise.race([drawn, new Promise((resolve) => setTimeout(resolve, WAIT_MS))]);
    // The page's header fills in meanwhile: the viewer's height may change, and the home view
    // with it (OpenSeadragon refits on its first frame).
    const resized = new ResizeObserver(() => paint(painting, element, source, tiles, null));
    resized.observe(element);
    // The user's first key, click, touch or wheel may move OpenSeadragon's view: the painting
    // would hide it. (Not OpenSeadragon's own view changes: on opening it refits itself.)
    const moves = ["keydown", "pointerdown", "wheel"];
    for (const type of moves) window.addEventListener(type, unpaint, { capture: true });
    stopPainting = () => {
      resized.disconnect();
      for (const type of moves) window.removeEventListener(type, unpaint, { capture: true });
    };
  }

  /** The early answer for ``url`` (a Promise of its decoded image), once, or null. */
  function take(url) {
    const promise = early.get(url) || null;
    early.delete(url);
    return promise;
  }

  function unpaint() {
    if (!canvas) return;
    stopPainting();
    canvas.parentNode.dataset.firstView = "handed-over";
    canvas.remove();
    canvas = null;
  }

  /** OpenSeadragon's first view is complete: the painting goes, and tiles nobody took by now
      are not needed. */
  function handOver() {
    early.clear();
    unpaint();
  }

  start();
  /** A Promise: the painting is on screen (every tile drawn or failed), or WAIT_MS have
      passed. viewer.js starts OpenSeadragon then: the two would compete for the same CPU. */
  const painted = () => shown;
  return { take, handOver, painted };
})();
