/* A slide seen through a signed link (share.js makes them): no account, no session; the
   link's exp/kid/sig open this slide's tiles for at most 15 minutes, nothing else.
   /static/signed.html?slide=ID&x=..&y=..&zoom=..&rot=..&exp=..&kid=..&sig=..
   The descriptor and the tiles are fetched without cookies: a signed-in visitor is the
   link's guest here, whatever their own grants (the server reads a session before a
   signature). */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const slideId = params.get("slide") || "";
  const signed = new URLSearchParams();
  for (const name of ["exp", "kid", "sig"]) signed.set(name, params.get(name) || "");

  function message(text) {
    const node = $("viewer-message");
    node.textContent = text;
    node.className = "viewer-message error";
  }

  /** {x, y, zoom, rot} as share.js writes it, or null. */
  function view() {
    const v = ["x", "y", "zoom", "rot"].map((name) => Number(params.get(name) || NaN));
    const [x, y, zoom] = v;
    const rot = Number.isFinite(v[3]) ? v[3] : 0;
    return [x, y, zoom].every(Number.isFinite) && zoom > 0 && zoom <= 1000 ? { x, y, zoom, rot } : null;
  }

  function fetchTile(job) {
    const controller = new AbortController();
    job.userData.controller = controller;
    fetch(job.src, { signal: controller.signal, credentials: "omit" })
      .then(async (response) => {
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        // Decoded through the profile the tile carries (icc=embed below): OpenSeadragon's own
        // blob decoder ignores profiles. (Not an image, as the viewer does: an image of this
        // origin would carry the visitor's cookies.)
        const blob = await response.blob();
        job.finish(await createImageBitmap(blob, { colorSpaceConversion: "default" }), null,
          "imageBitmap");
      })
      .catch((error) => {
        if (!controller.signal.aborted) job.fail(`tile request failed: ${error.message}`, null);
      });
  }

  function abortTile(job) {
    if (job.userData.controller) job.userData.controller.abort();
  }

  async function init() {
    const exp = Number(signed.get("exp"));
    if (!/^[0-9a-f]{32}$/.test(slideId) || !Number.isFinite(exp) || !signed.get("sig")) {
      message("This link is incomplete: ask for a new one.");
      return;
    }
    const until = new Date(exp * 1000);
    $("signed-expiry").textContent = `Link valid until ${until.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
    if (typeof OpenSeadragon === "undefined") {
      message("The image viewer component (OpenSeadragon) is not installed on this server.");
      return;
    }
    const dzi = `/deepzoom/${slideId}.dzi?${signed}`;
    const response = await fetch(dzi, { credentials: "omit" }).catch(() => null);
    if (!response || !response.ok) {
      message(Date.now() >= until.getTime() || (response && response.status === 403)
        ? "This link has expired or is not valid: ask for a new one."
        : "The slide could not be opened.");
      return;
    }
    const source = TS.dziSource(await response.text(), slideId);
    if (!source) {
      message("The slide could not be opened.");
      return;
    }
    TS.markOsdMobileCss();
    const viewer = OpenSeadragon(TS.viewerOptions({
      element: $("osd"),
      // The slide's colours: its ICC profile in each tile (none for a slide without one).
      tileSources: { ...source, queryParams: `?${signed}&icc=embed` },
      navigatorSizeRatio: 0.17,
      maxZoomPixelRatio: 2,
      minZoomImageRatio: 0.25,
      visibilityRatio: 0.4,
    }));
    viewer.world.addHandler("add-item", (event) => {
      event.item.source.downloadTileStart = fetchTile;
      event.item.source.downloadTileAbort = abortTile;
    });
    viewer.addHandler("open", () => {
      const v = view();
      const viewport = viewer.viewport;
      if (v) {
        viewport.setRotation(v.rot, true);
        viewport.zoomTo(viewport.imageToViewportZoom(v.zoom), null, true);
        viewport.panTo(viewport.imageToViewportCoordinates(new OpenSeadragon.Point(v.x, v.y)), true);
      }
      const bounds = viewport.viewportToImageRectangle(viewport.getBoundsNoRotate(true));
      $("osd").dataset.bounds = [bounds.x, bounds.y, bounds.width, bounds.height]
        .map((n) => n.toFixed(2)).join(",");
      document.body.dataset.open = "true";
      viewer.world.getItemAt(0).addHandler("fully-loaded-change", (event) => {
        document.body.dataset.fullyLoaded = String(event.fullyLoaded);
      });
    });
    viewer.addHandler("open-failed", () => message("The slide could not be opened."));
    viewer.addHandler("tile-load-failed", () => {
      if (Date.now() >= until.getTime()) message("This link has expired: ask for a new one.");
    });
  }

  init();
})();
