/* Compatibility check: a stock OpenSeadragon given nothing but our DZI or IIIF info.json URL
   (?id=SLIDE_ID). No tileserver code is involved; used by tests/viewer. */
"use strict";

(() => {
  const id = new URLSearchParams(location.search).get("id") || "";
  const protocol = document.body.dataset.protocol;
  const url = protocol === "iiif" ? `/iiif/3/${id}/info.json` : `/deepzoom/${id}.dzi`;
  const viewer = OpenSeadragon({
    id: "osd",
    prefixUrl: "/static/vendor/openseadragon/images/",
    tileSources: url,
    drawer: "canvas", // headless test browsers have no GPU; the stock default is WebGL
  });
  viewer.addHandler("open", () => { document.body.dataset.open = "true"; });
  viewer.addHandler("open-failed", () => { document.body.dataset.open = "failed"; });
  viewer.addHandler("tile-loaded", () => {
    document.body.dataset.tiles = String(Number(document.body.dataset.tiles || 0) + 1);
  });
})();
