"""The gallery page's inline stylesheet and script (no framework, no network).

The script keeps the view, order and page number in the address's fragment
(`#show=genre-03&order=uncertain&page=2`), so back and forward work and a link opens a
given page; it loads that page's script (`pages/VIEW/NNNNNN.js`, which calls
`galleryPage`) and draws its posters.
"""

from poster_ray.report.html import STYLE

GALLERY_STYLE = (
    STYLE
    + """
.controls { position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 1; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.card { font-size: 12px; overflow-wrap: anywhere; }
.card img { width: 120px; height: 180px; object-fit: contain; background: #eee; display: block; }
.card .blank { width: 120px; height: 180px; background: #eee; }
.bar { display: flex; align-items: center; gap: 4px; }
.bar span:first-child { width: 78px; overflow: hidden; white-space: nowrap; }
.bar .prob { white-space: nowrap; }
.bar i { display: block; height: 8px; background: #1a73e8; }
.chip { display: inline-block; background: #e8f0fe; border-radius: 8px; padding: 0 6px;
        margin: 1px; }
.card.error { border: 1px solid #b3261e; padding: 4px; }
.card.error .message { color: #b3261e; }
"""
)

GALLERY_SCRIPT = """
const views = JSON.parse(document.getElementById('views').textContent);
const grid = document.getElementById('grid');
const show = document.getElementById('show'), order = document.getElementById('order');

function state() {
  const params = new URLSearchParams(location.hash.slice(1));
  return {show: params.get('show') || 'all', order: params.get('order') || 'file',
          page: Math.max(1, parseInt(params.get('page') || '1', 10))};
}
function viewOf(s) {
  return s.show !== 'errors' && s.order === 'uncertain' ? s.show + '-uncertain' : s.show;
}
function go(changes) {
  const s = Object.assign(state(), changes);
  location.hash = new URLSearchParams(s).toString();
}
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
function card([id, thumb, path, top, above, error]) {
  const node = element('div', error ? 'card error' : 'card');
  node.title = path;
  if (thumb) {
    const img = element('img'); img.src = thumb; img.alt = id; img.loading = 'lazy';
    node.append(img);
  } else node.append(element('div', 'blank'));
  node.append(element('b', 'id', id));
  if (error) { node.append(element('div', 'message', error)); return node; }
  for (const [genre, prob] of top) {
    const bar = element('div', 'bar');
    const fill = element('i'); fill.style.width = Math.round(prob * 40) + 'px';
    bar.append(element('span', '', genre), fill, element('span', 'prob', prob.toFixed(2)));
    node.append(bar);
  }
  const chips = element('div', 'above', above.length ? '' : 'nothing above threshold');
  for (const genre of above) chips.append(element('span', 'chip', genre));
  node.append(chips);
  return node;
}
window.galleryPage = function (data) {
  const s = state();
  if (data.view !== viewOf(s) || data.page !== s.page) return;  // a stale answer
  grid.replaceChildren(...data.rows.map(card));
  document.body.dataset.loaded = data.view + '/' + data.page;
};
function render() {
  const s = state(), view = viewOf(s), info = views[view] || {rows: 0, pages: 0};
  show.value = s.show; order.value = s.order;
  document.getElementById('position').textContent =
    info.pages ? `page ${s.page} of ${info.pages} (${info.rows} posters)` : 'no posters';
  grid.replaceChildren();
  document.body.dataset.loaded = '';
  if (!info.pages || s.page > info.pages) { document.body.dataset.loaded = view + '/none'; return; }
  document.querySelectorAll('script.page').forEach((old) => old.remove());
  const script = element('script', 'page');
  script.src = `pages/${view}/${String(s.page).padStart(6, '0')}.js`;
  document.head.append(script);
}
show.onchange = () => go({show: show.value, page: 1});
order.onchange = () => go({order: order.value, page: 1});
document.getElementById('prev').onclick = () => go({page: Math.max(1, state().page - 1)});
document.getElementById('next').onclick = () => {
  const s = state(), pages = (views[viewOf(s)] || {pages: 1}).pages;
  go({page: Math.min(s.page + 1, Math.max(pages, 1))});
};
window.onhashchange = render;
render();
"""
