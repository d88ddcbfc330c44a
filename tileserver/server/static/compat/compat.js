/* Compatibility check: a stock OpenSeadragon given nothing but our DZI or IIIF info.json URL
   (?id=SLIDE_ID, and for a shared link &signed=QUERY). No tileserver code is involved; used
   by tests/viewer. */
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const id = params.get("id") || "";
  const protocol = document.body.dataset.protocol;
  const base = protocol === "iiif" ? `/iiif/3/${id}/info.json` : `/deepzoom/${id}.dzi`;
  const url = params.get("signed") ? `${base}?${params.get("signed")}` : base;
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
