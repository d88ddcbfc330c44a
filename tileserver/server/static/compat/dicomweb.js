/* Compatibility check: dicom-microscopy-viewer (the library inside Slim), as its README uses
   it, given nothing but our DICOMweb root and a series (?study=UID&series=UID). It reads the
   series metadata (WADO-RS) and fetches frames with the session cookie, like any same-origin
   client. No tileserver code is involved; used by tests/viewer. Progress is exposed on <body>
   for the tests: data-open (pending | true | failed), data-frames, data-frame-errors. */
"use strict";

// Where the library finds its decoder worker (and the worker its .wasm codecs): read when the
// first worker starts (dicom-microscopy-viewer src/webWorker/webWorkerManager.js).
window.PUBLIC_LIB_URL = "/static/vendor/dicom-microscopy-viewer/dynamic-import/";

(() => {
  const WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"; // VL Whole Slide Microscopy Image
  const PYRAMID = new Set(["VOLUME", "THUMBNAIL"]); // LABEL and OVERVIEW are not tiles
  const EVENTS = window.dicomMicroscopyViewer.events.EVENTS;
  const body = document.body;
  const container = document.getElementById("viewport");
  const params = new URLSearchParams(location.search);
  const study = params.get("study") || "";
  const series = params.get("series") || "";

  const fail = (error) => {
    body.dataset.open = "failed";
    const message = document.getElementById("message");
    message.textContent = `Cannot show the series: ${error && error.message ? error.message : error}`;
    message.classList.remove("hidden");
    console.error(error);
  };
  const count = (key) => () => { body.dataset[key] = String(Number(body.dataset[key]) + 1); };
  container.addEventListener(EVENTS.FRAME_LOADING_ENDED, (event) => {
    // The library also sends "ended" after a failure, then "error": count only decoded frames.
    if (event.detail.payload && event.detail.payload.pixelArray) count("frames")();
  });
  container.addEventListener(EVENTS.FRAME_LOADING_ERROR, count("frameErrors"));

  const client = new DICOMwebClient.api.DICOMwebClient({ url: `${location.origin}/dicomweb` });
  client
    .retrieveSeriesMetadata({ studyInstanceUID: study, seriesInstanceUID: series })
    .then((instances) => {
      const images = instances
        .filter((json) => json["00080016"] && json["00080016"].Value[0] === WSI_SOP_CLASS)
        .map((json) => new window.dicomMicroscopyViewer.metadata.VLWholeSlideMicroscopyImage({
          metadata: json,
        }))
        .filter((image) => PYRAMID.has(image.ImageType[2]));
      if (images.length === 0) throw new Error("no VOLUME image in the series");
      const viewer = new window.dicomMicroscopyViewer.viewer.VolumeImageViewer({
        client,
        metadata: images,
      });
      viewer.render({ container });
      body.dataset.open = "true";
    })
    .catch(fail);
})();
