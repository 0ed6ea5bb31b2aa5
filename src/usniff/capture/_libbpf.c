/*
 * usniff._libbpf: the libbpf that usniff.libbpf binds with ctypes.
 *
 * The module itself only reports libbpf's version; what matters is that it
 * is linked against libbpf.so.1, so that `auditwheel repair` copies that
 * library (and libelf, zlib) into the wheel and points this module's RPATH
 * at the copies.  usniff.libbpf dlopen()s this module and looks libbpf's
 * functions up through its handle (dlsym searches a handle's dependencies),
 * so an installed wheel needs no libbpf on the system.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <bpf/libbpf.h>

static PyObject *version(PyObject *self, PyObject *unused)
{
	return PyUnicode_FromString(libbpf_version_string());
}

static PyMethodDef methods[] = {
	{"version", version, METH_NOARGS, "The linked libbpf's version, as \"v1.1\"."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "usniff._libbpf", "libbpf, for usniff.libbpf (ctypes).", -1, methods,
};

PyMODINIT_FUNC PyInit__libbpf(void)
{
	return PyModule_Create(&module);
}
