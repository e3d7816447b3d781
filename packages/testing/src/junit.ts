/** A JUnit XML report of one suite `s` holding `cases` (`<testcase …/>` elements), as test tools write them. */
export const junitXml = (cases: string) => `<?xml version="1.0"?>\n<testsuites><testsuite name="s">${cases}</testsuite></testsuites>\n`;
