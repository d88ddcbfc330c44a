/* Slide viewer: OpenSeadragon over our DZI, overview map, scale bar, ruler, magnification
   presets, keyboard shortcuts, next/previous in the case, label (when allowed), session expiry. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const slideId = location.pathname.split("/").pop();
  const PRESETS = [1, 2, 5, 10, 20, 40];
  const SCALEBAR_MAX_PX = 160;

  let viewer = null;
  let mpp = null; // [x, y] µm per level-0 pixel
  let objective = null; // magnification at level 0
  let ruler = null; // {a, b} in level-0 pixels
  let rulerMode = false;
  let dragging = false;
  let neighbours = { prev: null, next: null };
  let labelLoaded = false;
  let labelHidden = false;
  const tiles = { loaded: 0, failed: 0, cancelled: 0 };

  function message(text, kind = "error") {
    const node = $("viewer-message");
    node.textContent = text;
    node.className = "viewer-message " + kind;
  }

  // -- magnification ----------------------------------------------------------------------
  /** Screen (CSS) pixels per level-0 pixel. */
  function imageZoom() {
    if (!viewer || viewer.world.getItemCount() === 0) return null;
    return viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
  }

  /** A preset is a jump, not a gesture: no animation, so no tiles of the levels on the way
      (OpenSeadragon fetches for the current zoom while it animates). Small slides may go below
      the whole-slide view: 1× is 1×, not clamped to a quarter of the fitted zoom. */
  function goToMagnification(power) {
    if (!viewer || !objective || viewer.world.getItemCount() === 0) return;
    const viewport = viewer.viewport;
    const target = viewport.imageToViewportZoom(power / objective);
    const ratio = target / viewport.getHomeZoom();
    if (ratio < viewport.minZoomImageRatio) viewport.minZoomImageRatio = ratio * 0.999;
    viewport.zoomTo(target, null, true);
    viewport.applyConstraints(true);
  }

  function buildPresets() {
    const box = $("presets");
    box.replaceChildren();
    PRESETS.forEach((power, index) => {
      const allowed = objective && power <= objective * 2; // up to 2x over-zoom
      box.append(TS.el("button", {
        type: "button",
        class: "preset",
        "data-power": String(power),
        title: `${power}× (${index + 1})`,
        disabled: !allowed,
        onclick: () => goToMagnification(power),
        text: `${power}×`,
      }));
    });
  }

  function updateReadouts() {
    const zoom = imageZoom();
    if (zoom === null) return;
    const readout = $("magnification");
    if (objective) {
      const mag = objective * zoom;
      readout.textContent = (mag < 10 ? mag.toFixed(1) : Math.round(mag)) + "×";
      readout.dataset.magnification = mag.toFixed(3);
      for (const button of document.querySelectorAll(".preset")) {
        const power = Number(button.dataset.power);
        button.classList.toggle("active", Math.abs(mag - power) / power < 0.03);
      }
    } else {
      readout.textContent = Math.round(zoom * 100) + "%";
    }
    updateScalebar(zoom);
    drawRuler();
  }

  // -- scale bar ---------------------------------------------------------------------------
  /** The largest 1-2-5 length not above ``limit``. */
  function niceLength(limit) {
    const exponent = Math.floor(Math.log10(limit));
    const base = Math.pow(10, exponent);
    for (const step of [5, 2, 1]) {
      if (step * base <= limit) return step * base;
    }
    return base;
  }

  function updateScalebar(zoom) {
    const box = $("scalebar");
    if (!mpp || !zoom) {
      box.classList.add("hidden");
      return;
    }
    const umPerPx = mpp[0] / zoom;
    const length = niceLength(umPerPx * SCALEBAR_MAX_PX);
    const px = length / umPerPx;
    $("scalebar-bar").style.width = px.toFixed(1) + "px";
    $("scalebar-label").textContent = TS.formatLength(length);
    box.dataset.um = String(length);
    box.dataset.px = px.toFixed(2);
    box.dataset.umPerPx = umPerPx.toPrecision(6);
    box.classList.remove("hidden");
  }

  // -- ruler -------------------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";

  function setRulerMode(on) {
    rulerMode = on;
    $("ruler-toggle").setAttribute("aria-pressed", String(on));
    $("ruler-toggle").classList.toggle("active", on);
    document.body.classList.toggle("ruler-mode", on);
  }

  function clearRuler() {
    ruler = null;
    dragging = false;
    drawRuler();
  }

  function distanceUm(a, b) {
    if (!mpp) return null;
    return Math.hypot((b.x - a.x) * mpp[0], (b.y - a.y) * mpp[1]);
  }

  function svgNode(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  function drawRuler() {
    const layer = $("ruler-layer");
    const readout = $("ruler-readout");
    layer.replaceChildren();
    if (!ruler || !viewer) {
      readout.classList.add("hidden");
      return;
    }
    const toScreen = (p) =>
      viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(p.x, p.y));
    const a = toScreen(ruler.a);
    const b = toScreen(ruler.b);
    const line = { x1: a.x, y1: a.y, x2: b.x, y2: b.y };
    layer.append(svgNode("line", { ...line, class: "ruler-halo" }));
    layer.append(svgNode("line", { ...line, class: "ruler-line" }));
    for (const p of [a, b]) layer.append(svgNode("circle", { cx: p.x, cy: p.y, r: 4, class: "ruler-end" }));
    const um = distanceUm(ruler.a, ruler.b);
    const px = Math.hypot(ruler.b.x - ruler.a.x, ruler.b.y - ruler.a.y);
    readout.textContent = um === null ? `${Math.round(px)} px` : TS.formatLength(um);
    readout.dataset.um = um === null ? "" : um.toFixed(3);
    readout.dataset.px = px.toFixed(2);
    readout.style.left = Math.round(b.x + 12) + "px";
    readout.style.top = Math.round(b.y + 12) + "px";
    readout.classList.remove("hidden");
  }

  function imagePoint(position) {
    const p = viewer.viewport.viewerElementToImageCoordinates(position);
    return { x: p.x, y: p.y };
  }

  function wireRuler() {
    viewer.addHandler("canvas-press", (event) => {
      if (!rulerMode) return;
      const p = imagePoint(event.position);
      ruler = { a: p, b: p };
      dragging = true;
      drawRuler();
    });
    viewer.addHandler("canvas-drag", (event) => {
      if (!rulerMode) return;
      event.preventDefaultAction = true; // no panning while measuring
      if (dragging && ruler) {
        ruler.b = imagePoint(event.position);
        drawRuler();
      }
    });
    viewer.addHandler("canvas-drag-end", (event) => {
      if (rulerMode) event.preventDefaultAction = true;
    });
    viewer.addHandler("canvas-release", () => {
      dragging = false;
    });
    for (const name of ["canvas-click", "canvas-double-click"]) {
      viewer.addHandler(name, (event) => {
        if (rulerMode) event.preventDefaultAction = true;
      });
    }
  }

  // -- keyboard ----------------------------------------------------------------------------
  function pan(dx, dy, far) {
    const bounds = viewer.viewport.getBounds(true);
    const f = far ? 0.5 : 0.15;
    viewer.viewport.panBy(new OpenSeadragon.Point(dx * bounds.width * f, dy * bounds.height * f));
    viewer.viewport.applyConstraints();
  }

  function zoom(factor) {
    viewer.viewport.zoomBy(factor);
    viewer.viewport.applyConstraints();
  }

  function toggleHelp(force) {
    const help = $("help");
    const show = force === undefined ? help.classList.contains("hidden") : force;
    help.classList.toggle("hidden", !show);
  }

  function toggleLabel() {
    if (!labelLoaded) return;
    labelHidden = !labelHidden;
    $("label-panel").classList.toggle("hidden", labelHidden);
  }

  function toggleNavigator() {
    if (viewer && viewer.navigator) viewer.navigator.element.classList.toggle("nav-hidden");
  }

  function go(id) {
    if (id) location.assign(`/view/${id}`);
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
    const key = event.key;
    let handled = true;
    if (key === "?") toggleHelp();
    else if (key === "Escape") {
      if (!$("help").classList.contains("hidden")) toggleHelp(false);
      else if (ruler) clearRuler();
      else setRulerMode(false);
    } else if (key === "n" || key === "N" || key === "PageDown") go(neighbours.next);
    else if (key === "p" || key === "P" || key === "PageUp") go(neighbours.prev);
    else if (key === "w" || key === "W") location.assign("/");
    else if (!viewer || viewer.world.getItemCount() === 0) handled = false;
    else if (key === "ArrowLeft") pan(-1, 0, event.shiftKey);
    else if (key === "ArrowRight") pan(1, 0, event.shiftKey);
    else if (key === "ArrowUp") pan(0, -1, event.shiftKey);
    else if (key === "ArrowDown") pan(0, 1, event.shiftKey);
    else if (key === "+" || key === "=") zoom(1.5);
    else if (key === "-" || key === "_") zoom(1 / 1.5);
    else if (key === "0" || key === "Home") viewer.viewport.goHome();
    else if (/^[1-6]$/.test(key)) goToMagnification(PRESETS[Number(key) - 1]);
    else if (key === "r" || key === "R") setRulerMode(!rulerMode);
    else if (key === "m" || key === "M") toggleNavigator();
    else if (key === "l" || key === "L") toggleLabel();
    else handled = false;
    if (handled) event.preventDefault();
  }

  // -- the case: next / previous in worklist order ----------------------------------------
  function wireCase(cases) {
    const found = (cases || []).find((c) => c.slides.includes(slideId));
    if (!found) return;
    const index = found.slides.indexOf(slideId);
    neighbours = {
      prev: index > 0 ? found.slides[index - 1] : null,
      next: index < found.slides.length - 1 ? found.slides[index + 1] : null,
    };
    $("case-name").textContent = found.name;
    $("slide-position").textContent = `${index + 1} / ${found.slides.length}`;
    $("prev-slide").disabled = !neighbours.prev;
    $("next-slide").disabled = !neighbours.next;
    document.title = `${TS.shortId(slideId)} · ${found.name} · Tileserver`;
  }

  // -- label -------------------------------------------------------------------------------
  function loadLabel(info) {
    if (!(info.associated || []).includes("label")) return;
    const img = $("label-image");
    img.addEventListener("load", () => {
      labelLoaded = true;
      $("label-panel").classList.toggle("hidden", labelHidden);
    });
    img.addEventListener("error", () => { labelLoaded = false; }); // not allowed or not kept
    img.fetchPriority = "low"; // after the slide's own tiles
    img.src = `/api/slides/${slideId}/associated/label`;
  }

  // -- tiles -------------------------------------------------------------------------------
  function showTileStatus() {
    const node = $("tile-status");
    node.textContent = tiles.failed
      ? `${tiles.loaded} tiles · ${tiles.failed} failed`
      : `${tiles.loaded} tiles`;
    node.dataset.loaded = String(tiles.loaded);
    node.dataset.failed = String(tiles.failed);
    node.dataset.cancelled = String(tiles.cancelled);
  }

  // -- tile loading: the viewport first, stale requests cancelled ----------------------------
  // Tiles are fetched with fetch() and an AbortController (OpenSeadragon's documented
  // downloadTileStart/downloadTileAbort extension points). While the view animates,
  // OpenSeadragon asks for the tiles of every view on the way; a tile outside the view the
  // animation ends at is held back (sent if the end view turns out to need it), and a request
  // for a tile that left both views, or of a level finer than either needs, is dropped or
  // aborted: the browser takes it out of its queue (or the server drops the work), so the
  // tiles of the new view go first.
  const inFlight = new Set(); // sent requests for the main image's tiles
  const held = new Set(); // jobs for tiles outside the end view, not sent

  function isMainTile(tile) {
    const item = tile && tile.tiledImage;
    return Boolean(viewer && item && viewer.world.getIndexOfItem(item) >= 0);
  }

  /** The finest level OpenSeadragon draws at the current or target zoom (its own rule: the
      finest level with at least ``minPixelRatio`` screen pixels per level pixel). */
  function finestLevel(item, current) {
    const source = item.source;
    const scale = item.getBounds(current).width;
    for (let level = source.maxLevel; level > source.minLevel; level--) {
      const ratio = source.getPixelRatio(level);
      const pixel = viewer.viewport.deltaPixelsFromPointsNoRotate(ratio, current);
      if (pixel.x * scale >= item.minPixelRatio) return level;
    }
    return source.minLevel;
  }

  /** Where a tile stands: needed by the end view, or by the view drawn now (then OpenSeadragon
      may still ask for it: never cancelled), or by neither (stale). */
  function standing(tile) {
    const item = tile.tiledImage;
    const inside = (area, finest) =>
      Boolean(area && tile.level <= finest && area.intersection(tile.bounds));
    if (inside(item.getLoadArea(), finestLevel(item, false))) return "end";
    if (inside(item.getDrawArea(), finestLevel(item, true))) return "now";
    return "stale";
  }

  function fetchTile(job) {
    if (isMainTile(job.tile) && standing(job.tile) !== "end") {
      window.clearTimeout(job.jobId); // no time-out while held: it has not been sent
      job.jobId = -1;
      held.add(job);
      return;
    }
    send(job);
  }

  function send(job) {
    const controller = new AbortController();
    job.userData.controller = controller;
    if (isMainTile(job.tile)) inFlight.add(job);
    const asked = () => TS.loadTile(job.src, controller.signal);
    // Loaded before OpenSeadragon (firstview.js), else now; a failed early load is asked
    // again. Cancelling one asked early only stops waiting for it.
    const early = typeof TSFirstView === "undefined" ? null : TSFirstView.take(job.src);
    (early ? early.catch(asked) : asked())
      .then((image) => {
        if (controller.signal.aborted) return;
        inFlight.delete(job);
        if (!job.jobId) return; // timed out meanwhile: OpenSeadragon has failed it already
        job.finish(image, null, "image");
      })
      .catch(() => {
        inFlight.delete(job);
        if (controller.signal.aborted || !job.jobId) return; // cancelled, or timed out
        job.fail("the tile could not be loaded (refused, missing or not an image)", null);
      });
  }

  function abortTile(job) {
    inFlight.delete(job);
    if (job.userData.controller) job.userData.controller.abort();
  }

  /** A job ends without a result: the tile is no longer "loading" (OpenSeadragon asks again if
      a view needs it), and, as ImageLoader does when a job completes, its slot is freed. */
  function release(job) {
    window.clearTimeout(job.jobId);
    job.jobId = null; // finish() and our fail() calls now do nothing
    job.tile.loading = false;
    const loader = viewer.imageLoader;
    loader.jobsInProgress -= 1;
    while (loader.canAcceptNewJob() && loader.jobQueue.length > 0) {
      loader.jobQueue.shift().start();
      loader.jobsInProgress += 1;
    }
  }

  /** After OpenSeadragon chose this frame's tiles: held tiles the end view needs are sent,
      stale ones dropped; stale requests in the loader's queue dropped, sent ones aborted. */
  function prioritise() {
    for (const job of [...held]) {
      const where = standing(job.tile);
      if (where === "now") continue;
      held.delete(job);
      if (where === "stale") {
        release(job);
      } else {
        const timedOut = () => job.fail(`Image load exceeded timeout (${job.timeout} ms)`, null);
        job.jobId = window.setTimeout(timedOut, job.timeout); // as ImageJob.start arms it
        send(job);
      }
    }
    const loader = viewer.imageLoader;
    const stale = (job) => isMainTile(job.tile) && standing(job.tile) === "stale";
    const queued = loader.jobQueue.filter(stale);
    for (const job of queued) {
      loader.jobQueue.splice(loader.jobQueue.indexOf(job), 1);
      job.tile.loading = false; // never started: no slot to free
    }
    for (const job of [...inFlight]) {
      if (standing(job.tile) !== "stale") continue;
      abortTile(job);
      release(job);
      tiles.cancelled += 1;
      showTileStatus();
    }
  }

  /** The first view fetches only the level it displays. OpenSeadragon would also fetch each
      coarser level, down to its cut-off level (the finest with one tile), as blurry
      placeholders until the displayed level covers the screen: a quarter more tiles before the
      first sharp screen on the demo slide. Its cut-off level bounds that descent: held at the
      displayed level until the first view is fully loaded, then restored, so later pans and
      zooms show placeholders as before. (``savedCutOffLevel`` is OpenSeadragon 6's field.) */
  function displayedLevelFirst(item) {
    const cutoff = item.savedCutOffLevel;
    const hold = () => {
      item.savedCutOffLevel = Math.max(cutoff, finestLevel(item, false));
    };
    const done = (event) => {
      if (!event.fullyLoaded) return;
      handOver();
      item.savedCutOffLevel = cutoff;
      viewer.removeHandler("viewport-change", hold);
      item.removeHandler("fully-loaded-change", done);
    };
    hold();
    viewer.addHandler("viewport-change", hold); // e.g. a shared link's view, set on opening
    item.addHandler("fully-loaded-change", done);
  }

  /** firstview.js's painting goes once OpenSeadragon's own first view is complete (drawn in
      this frame; firstview.js itself removes it earlier if the user moves the view). */
  function handOver() {
    if (typeof TSFirstView !== "undefined") TSFirstView.handOver();
  }

  /** ``#osd[data-sharp]``: the view is still and every tile of the displayed level is in. */
  function showSharpness() {
    const item = viewer.world.getItemAt(0);
    const sharp = Boolean(item && !viewer.isAnimating() && item.getFullyLoaded());
    $("osd").dataset.sharp = String(sharp);
  }

  function facts(info) {
    const parts = [`${TS.formatCount(info.width)} × ${TS.formatCount(info.height)} px`];
    parts.push(mpp ? `${mpp[0].toFixed(3)} µm/px` : "pixel size unknown (no µm measurements)");
    if (info.objective_power) parts.push(`scanned at ${+info.objective_power}×`);
    if (info.vendor) parts.push(info.vendor);
    $("slide-facts").textContent = parts.join(" · ");
  }

  function startViewer(dzi) {
    TS.markOsdMobileCss();

    viewer = OpenSeadragon(TS.viewerOptions({
      element: $("osd"),
      tileSources: dzi || `/deepzoom/${slideId}.dzi`, // the URL: OpenSeadragon says what failed
      navigatorSizeRatio: 0.17,
      maxZoomPixelRatio: 2,
      minZoomImageRatio: 0.25,
      visibilityRatio: 0.4,
      animationTime: 0.45,
      springStiffness: 9,
      blendTime: 0.05,
      zoomPerScroll: 1.4,
      // Loading tuned for a tile server beyond TS.viewerOptions (the why: docs/viewer.md).
      imageLoaderLimit: 0, // the browser's per-host limit queues them; stale ones are cancelled
      timeout: 30000,
    }));
    // Our own shortcuts handle every key; OpenSeadragon's would act twice.
    viewer.addHandler("canvas-key", (event) => { event.preventDefaultAction = true; });
    viewer.world.addHandler("add-item", (event) => {
      // One source object serves the image and the overview map: patch it once.
      const source = event.item.source;
      source.downloadTileStart = fetchTile;
      source.downloadTileAbort = abortTile;
    });
    viewer.addHandler("open", () => {
      document.body.dataset.open = "true";
      const item = viewer.world.getItemAt(0);
      displayedLevelFirst(item);
      // The first tiles asked for now, not at the next animation frame, after the page's other
      // scripts have run: one update as OpenSeadragon's loop makes each frame.
      viewer.world.update(true);
      item.addHandler("fully-loaded-change", (event) => {
        document.body.dataset.fullyLoaded = String(event.fullyLoaded);
        showSharpness();
      });
      updateReadouts();
    });
    viewer.addHandler("viewport-change", prioritise); // after this frame's tiles are chosen
    viewer.addHandler("animation-start", showSharpness);
    viewer.addHandler("animation-finish", () => {
      prioritise(); // the end view is the view: nothing is held any more
      showSharpness();
    });
    viewer.addHandler("open-failed", async () => {
      handOver();
      if (await TS.checkSession()) message("The slide could not be opened.");
    });
    viewer.addHandler("tile-loaded", () => {
      tiles.loaded += 1;
      showTileStatus();
    });
    viewer.addHandler("tile-load-failed", () => {
      tiles.failed += 1;
      showTileStatus();
      TS.checkSession(); // a 401 means the session ended: log in and come back here
    });
    viewer.addHandler("animation", updateReadouts);
    viewer.addHandler("animation-finish", updateReadouts);
    viewer.addHandler("resize", updateReadouts);
    viewer.addHandler("update-viewport", drawRuler);
    wireRuler();
  }

  function wireButtons() {
    $("prev-slide").addEventListener("click", () => go(neighbours.prev));
    $("next-slide").addEventListener("click", () => go(neighbours.next));
    $("ruler-toggle").addEventListener("click", () => setRulerMode(!rulerMode));
    $("fit").addEventListener("click", () => viewer && viewer.viewport.goHome());
    $("help-toggle").addEventListener("click", () => toggleHelp());
    $("label-panel").addEventListener("click", toggleLabel);
    document.addEventListener("keydown", onKey);
  }

  const pageScriptsRun = new Promise((resolve) => {
    document.addEventListener("DOMContentLoaded", resolve, { once: true });
    if (document.readyState === "complete") resolve();
  });

  async function init() {
    wireButtons();
    TS.header();
    $("slide-id").textContent = slideId;
    $("slide-id").title = slideId;
    if (typeof OpenSeadragon === "undefined") {
      message("The image viewer component (OpenSeadragon) is not installed on this server. " +
              "An administrator must run scripts/setup-browser.sh.");
      return;
    }
    // The page carries the slide's facts and descriptor (server/routes/viewer.py): the viewer
    // starts as this script runs, with no round trip first. Without them, the API says why.
    const inline = TS.slideData();
    let info = inline && inline.info && inline.info.id === slideId ? inline.info : null;
    let dzi = info ? TS.dziSource(inline.dzi, slideId, TS.tileQuery(info)) : null;
    if (!info) {
      const dziPromise = fetch(`/deepzoom/${slideId}.dzi`, { credentials: "same-origin" })
        .then((response) => (response.ok ? response.text() : null))
        .catch(() => null);
      try {
        info = await TS.slideInfo(slideId);
      } catch (error) {
        if (error.status === 404) {
          message("Slide not found — it does not exist or it is not in a case assigned to you.");
        } else if (error.status !== 401) {
          message(`The slide could not be loaded: ${error.message}`);
        }
        buildPresets();
        return;
      }
      // fetched alongside: no second fetch
      dzi = TS.dziSource(await dziPromise, slideId, TS.tileQuery(info));
    }
    mpp = Array.isArray(info.mpp) && info.mpp[0] > 0 ? info.mpp : null;
    objective = info.objective_power > 0 ? Number(info.objective_power)
      : (mpp ? Math.round(10 / mpp[0]) : null); // ~10 µm/px at 1×
    buildPresets();
    // The page's later scripts lay it out (the case strip, side-by-side panes) as they run:
    // the viewer measures its element once they have (this deferred script runs before them).
    await pageScriptsRun;
    if (typeof TSFirstView !== "undefined") await TSFirstView.painted(); // on screen first
    startViewer(dzi); // first: its tile requests go out before the rest of the page's work
    if (typeof TSChannels !== "undefined") TSChannels.attach(viewer, info); // channels.js
    facts(info);
    loadLabel(info);
    wireCase(((await TS.cases().catch(() => null)) || {}).cases);
  }

  init();
})();
