"""The chapters as a reader sees them: JupyterLab in headless Chromium (issue 24).

Each chapter is opened from a copy without stored outputs, run through JupyterLab's own
"run all cells" command under ``DIFFLOSS_PROFILE=ci``, and checked: no error output anywhere,
its figures rendered as images, and its widget *working* — moving the control (keyboard on a
slider, a click on a button) changes the picture it drives. A screenshot per chapter goes to
``figures/ci/ui/``. A notebook whose widget callback raises must fail the same check.

This execution also serves nbval's check (:mod:`.nbcheck`): the cells marked
``# NBVAL_CHECK_OUTPUT`` must print what the committed chapter printed, and nbval does not run
these chapters a second time when the browser tests run (tests/ui/conftest.py).
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import ROOT, SHOTS
from .nbcheck import output_mismatches

#: Chapters, the least number of rendered images (figures and widget pictures) each must show,
#: and how its widget is moved.
CHAPTERS = {
    "01_forward_process.ipynb": (4, "slider"),
    "02_diffusion_prior.ipynb": (6, "slider"),
    "03_building_diffloss.ipynb": (6, "slider"),
    "04_train_msbdn_dense_haze.ipynb": (5, "slider"),
    "05_loss_comparison.ipynb": (4, "buttons"),
}
RUN_TIMEOUT_S = 240

_KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}"""
_ALL_RUN = """() => {
  const model = window.jupyterapp.shell.currentWidget.content.model;
  let code = 0;
  for (let i = 0; i < model.cells.length; i++) {
    const cell = model.cells.get(i);
    if (cell.type !== 'code') continue;
    code++;
    for (let j = 0; j < cell.outputs.length; j++) {
      if (cell.outputs.get(j).type === 'error') return true;  // run-all stops at an error
    }
    if (cell.executionCount === null || cell.executionCount === undefined) return false;
  }
  return code > 0;
}"""
_ERRORS = """() => {
  const model = window.jupyterapp.shell.currentWidget.content.model;
  const errors = [];
  for (let i = 0; i < model.cells.length; i++) {
    const cell = model.cells.get(i);
    if (cell.type !== 'code') continue;
    for (let j = 0; j < cell.outputs.length; j++) {
      const out = cell.outputs.get(j).toJSON();
      if (out.output_type === 'error') errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
    }
  }
  return errors;
}"""


_CODE_CELLS = """() => {
  const model = window.jupyterapp.shell.currentWidget.content.model;
  const cells = [];
  for (let i = 0; i < model.cells.length; i++) {
    const cell = model.cells.get(i);
    if (cell.type === 'code') cells.push(cell.toJSON());
  }
  return cells;
}"""


_OPENED = """(name) => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  return !!w && !!w.context && w.context.path === name;
}"""


def run_all(page, lab, name: str) -> None:
    """Open ``name`` in JupyterLab and run every cell; wait until the kernel is idle again.

    Each notebook opens in a workspace of its own, so that JupyterLab does not restore the tabs
    of the previous test and "the current notebook" is this one."""
    workspace = "ui-" + name.split(".")[0].replace("_", "-")
    page.goto(lab.url(f"lab/workspaces/{workspace}/tree/{name}"))
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=90_000)
    page.wait_for_function(_OPENED, arg=name, timeout=90_000)
    page.wait_for_function(_KERNEL_IDLE, timeout=90_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_ALL_RUN, timeout=RUN_TIMEOUT_S * 1000, polling=500)
    page.wait_for_function(_KERNEL_IDLE, timeout=60_000)


#: How long a moved control may take to change its picture: the frames are precomputed, so the
#: kernel round trip is all that is waited for (well under a second here).
PICTURE_WAIT_S = 4.0


def picture_follows_control(page, kind: str) -> None:
    """Move the first widget's control; its picture must change (AssertionError otherwise)."""
    box = page.locator(".widget-vbox").filter(has=page.locator("img.widget-image")).first
    box.scroll_into_view_if_needed()
    image = box.locator("img.widget-image").first
    before = image.get_attribute("src")
    if kind == "slider":
        handle = box.locator(".noUi-handle").first
        handle.focus()
        for key in ("ArrowRight", "ArrowRight", "ArrowLeft", "Home"):
            page.keyboard.press(key)
            time.sleep(0.3)
            if image.get_attribute("src") != before:
                break
    else:
        buttons = box.locator("button.widget-toggle-button")
        for i in range(buttons.count()):
            if "mod-active" not in (buttons.nth(i).get_attribute("class") or ""):
                buttons.nth(i).click()
                break
    deadline = time.monotonic() + PICTURE_WAIT_S
    while time.monotonic() < deadline and image.get_attribute("src") == before:
        time.sleep(0.2)
    assert image.get_attribute("src") != before, "moving the control did not change the picture"


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    try:  # stop this notebook's kernel: the next chapter gets the CPU to itself
        page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    except Exception:  # noqa: BLE001 - the page may be gone after a failure; the server cleans up
        pass
    context.close()


@pytest.mark.parametrize("name", list(CHAPTERS))
def test_chapter_runs_renders_and_its_widget_works(page, lab_server, name):
    min_images, kind = CHAPTERS[name]
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        run_all(page, lab_server, name)
        assert page.evaluate(_ERRORS) == []
        assert "Traceback (most recent call last)" not in page.inner_text(".jp-Notebook")
        images = page.locator(".jp-RenderedImage img, img.widget-image").count()
        assert images >= min_images, f"{images} images rendered, expected at least {min_images}"
        committed = json.loads((ROOT / "notebooks" / name).read_text())  # nbval's check, before
        problems = output_mismatches(committed, page.evaluate(_CODE_CELLS))  # the widget moves
        assert not problems, "cells marked NBVAL_CHECK_OUTPUT differ:\n" + "\n".join(problems)
        picture_follows_control(page, kind)
    finally:
        page.screenshot(path=str(SHOTS / name.replace(".ipynb", ".png")), full_page=False)


def test_a_widget_whose_callback_raises_fails_the_check(page, lab_server):
    run_all(page, lab_server, "broken_widget.ipynb")
    assert page.evaluate(_ERRORS) == []  # it runs cleanly; only moving it shows the fault
    with pytest.raises(AssertionError, match="did not change the picture"):
        picture_follows_control(page, "slider")
