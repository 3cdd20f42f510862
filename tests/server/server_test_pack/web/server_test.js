// A frontend extension of the server test pack; the tests only check that it is listed and served.
export const serverTest = true
