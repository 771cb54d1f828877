import { describe, expect, it } from "vitest";

import { atBottom, AutoScroll } from "../src/scroll";

const at = (scrollTop: number) => ({ scrollTop, clientHeight: 400, scrollHeight: 1000 });

describe("AutoScroll", () => {
  it("follows while the reader is at the bottom", () => {
    const scroll = new AutoScroll();
    scroll.onScroll(at(600));
    expect(scroll.following).toBe(true);
    expect(scroll.showJump(at(600))).toBe(false);
  });

  it("stops following when the reader scrolls up, and offers a way back", () => {
    const scroll = new AutoScroll();
    scroll.onScroll(at(200));
    expect(scroll.following).toBe(false);
    expect(scroll.showJump(at(200))).toBe(true);
    scroll.jump();
    expect(scroll.following).toBe(true);
  });

  it("counts a few pixels short of the end as the bottom", () => {
    expect(atBottom(at(580))).toBe(true);
    expect(atBottom(at(560))).toBe(false);
  });
});
