/* The first view's tiles, asked for as soon as the page is parsed: the whole slide at the
   level OpenSeadragon will draw it, computed from the facts and descriptor the page carries
   (server/routes/viewer.py) and the viewer's size. Without this they would wait for
   OpenSeadragon (350 KB) and the page's other scripts to load and run first. viewer.js takes
   them (TSFirstView.take) instead of asking again; a tile nobody takes is dropped.

   Only for the plain opening: a view in the address (a shared link, side-by-side panes,
   channel settings) or a slide with channels or focal planes opens elsewhere or asks with
   other parameters, so nothing is fetched ahead for it. */
"use strict";

const TSFirstView = (() => {
  const early = new Map(); // tile URL -> Promise<Blob>

  /** The tile URLs of the level OpenSeadragon draws ``source`` at when the whole slide fits
      an element of ``width`` x ``height`` CSS pixels (its home view), ``query`` appended. */
  function homeTiles(source, slideId, width, height, query) {
    const image = source.Image;
    const w = Number(image.Size.Width);
    const h = Number(image.Size.Height);
    const tile = Number(image.TileSize);
    if (!(w > 0 && h > 0 && tile > 0 && width > 0 && height > 0)) return [];
    const maxLevel = Math.ceil(Math.log2(Math.max(w, h)));
    const devicePerLevel0 = Math.min(width / w, height / h) * (window.devicePixelRatio || 1);
    // OpenSeadragon's rule: the finest level drawn at >= minPixelRatio device px per level px.
    const minPixelRatio = TS.viewerOptions({}).minPixelRatio;
    let level = maxLevel;
    while (level > 0 && devicePerLevel0 * 2 ** (maxLevel - level) < minPixelRatio) level -= 1;
    const scale = 2 ** (maxLevel - level);
    const columns = Math.ceil(Math.ceil(w / scale) / tile);
    const rows = Math.ceil(Math.ceil(h / scale) / tile);
    const urls = [];
    for (let y = 0; y < rows; y++) {
      for (let x = 0; x < columns; x++) {
        urls.push(`/deepzoom/${slideId}_files/${level}/${x}_${y}.${image.Format}${query}`);
      }
    }
    return urls;
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
    if (!source || !element) return;
    for (const url of homeTiles(source, slideId, element.clientWidth, element.clientHeight, query)) {
      early.set(url, fetch(url, { credentials: "same-origin" }).then((response) => {
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return response.blob();
      }));
      early.get(url).catch(() => {}); // a failure is the taker's to see (it asks again)
    }
  }

  /** The early request for ``url`` (a Promise of its Blob), once, or null. */
  function take(url) {
    const promise = early.get(url) || null;
    early.delete(url);
    return promise;
  }

  /** Tiles not taken by now are not needed (the first view is complete). */
  function drop() {
    early.clear();
  }

  start();
  return { take, drop };
})();
