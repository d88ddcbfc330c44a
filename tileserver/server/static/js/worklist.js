/* Worklist: the cases (collections) the user may see, their slides with thumbnails and labels
   (block, stain, scan date) in the server's reading order, search. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const status = $("worklist-status");
  const list = $("worklist");
  const search = $("search");
  const PAGE = 500;

  async function allSlides() {
    const items = [];
    for (let offset = 0; ; offset += PAGE) {
      const page = await TS.json(`/api/slides?offset=${offset}&limit=${PAGE}`);
      items.push(...page.items);
      if (items.length >= page.total || page.items.length === 0) return items;
    }
  }

  function magnification(slide) {
    return slide.objective_power ? `${+slide.objective_power}×` : "—";
  }

  /** Block, stain and scan date: what tells a case's slides apart. */
  function labelText(slide) {
    return [
      slide.block ? `Block ${slide.block}` : "",
      slide.stain || "",
      slide.scan_date ? `scanned ${slide.scan_date}` : "",
    ].filter(Boolean).join(" · ");
  }

  function card(slide, caseName) {
    const id = slide.id;
    const labels = labelText(slide);
    const available = slide.available !== false;
    const meta = available
      ? [
          `${TS.formatCount(slide.width)} × ${TS.formatCount(slide.height)} px`,
          slide.mpp ? `${slide.mpp[0].toFixed(3)} µm/px` : "pixel size unknown",
          magnification(slide),
          slide.vendor || "",
        ].filter(Boolean)
      : ["unavailable"];
    const thumb = TS.el("img", {
      class: "thumb",
      alt: `Thumbnail of slide ${TS.shortId(id)}`,
      loading: "lazy",
      decoding: "async",
      src: available ? `/api/slides/${id}/thumbnail?max=256` : null,
    });
    thumb.addEventListener("error", () => {
      thumb.classList.add("broken");
      TS.checkSession();
    });
    return TS.el(
      "a",
      {
        class: "slide-card" + (available ? "" : " unavailable"),
        href: `/view/${id}`,
        dataset: {
          id,
          search: `${id} ${caseName} ${labels} ${slide.vendor || ""}`.toLowerCase(),
        },
        title: labels ? `${labels} · ${id}` : id,
      },
      TS.el("div", { class: "thumb-box" }, thumb),
      TS.el(
        "div",
        { class: "slide-meta" },
        labels ? TS.el("div", { class: "slide-labels-line", text: labels }) : null,
        TS.el("div", { class: "slide-id mono", text: id }),
        TS.el("div", { class: "slide-facts", text: meta.join(" · ") }),
      ),
    );
  }

  function render(cases, slides) {
    const byId = new Map(slides.map((s) => [s.id, s]));
    list.replaceChildren();
    let count = 0;
    for (const c of cases) {
      const members = c.slides.filter((id) => byId.has(id)).map((id) => byId.get(id));
      if (members.length === 0) continue;
      count += members.length;
      const section = TS.el(
        "section",
        { class: "case", dataset: { case: c.name, search: c.name.toLowerCase() } },
        TS.el(
          "h2",
          { class: "case-title" },
          TS.el("span", { class: "case-name", text: c.name }),
          TS.el("span", { class: "case-count",
                          text: `${members.length} slide${members.length === 1 ? "" : "s"}` }),
        ),
        TS.el("div", { class: "slide-grid" }, members.map((s) => card(s, c.name))),
      );
      list.append(section);
    }
    status.textContent = count === 0
      ? "No slides are assigned to you. Ask an administrator for access to a case."
      : "";
    status.classList.toggle("hidden", count !== 0);
    filter();
  }

  function filter() {
    const terms = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const section of list.querySelectorAll(".case")) {
      const caseText = section.dataset.search;
      let any = false;
      for (const cardNode of section.querySelectorAll(".slide-card")) {
        const text = cardNode.dataset.search;
        const hit = terms.every((t) => text.includes(t) || caseText.includes(t));
        cardNode.classList.toggle("hidden", !hit);
        any = any || hit;
        if (hit) shown += 1;
      }
      section.classList.toggle("hidden", !any);
    }
    if (terms.length && shown === 0 && list.children.length) {
      status.textContent = "No case or slide matches the search.";
      status.classList.remove("hidden");
    } else if (list.children.length) {
      status.classList.add("hidden");
    }
  }

  search.addEventListener("input", filter);
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      const first = list.querySelector(".slide-card:not(.hidden)");
      if (first) location.assign(first.href);
    } else if (event.key === "Escape") {
      search.value = "";
      filter();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== search) {
      event.preventDefault();
      search.focus();
    }
  });

  (async () => {
    TS.header();
    try {
      const [cases, slides] = await Promise.all([TS.json("/viewer/cases"), allSlides()]);
      render(cases.cases, slides);
    } catch (error) {
      if (error.status !== 401) {
        status.textContent = `The worklist could not be loaded: ${error.message}`;
        status.classList.add("error");
      }
    }
  })();
})();
